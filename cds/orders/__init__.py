"""What happens to an order, whatever door it came in by (gRPC, CDS Hooks): it is checked
against the catalogue in force and the patient's results, the decision is remembered,
counted and logged, and the clinician's feedback on it is checked and recorded."""
