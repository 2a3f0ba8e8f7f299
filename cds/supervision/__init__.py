"""Reading decision logs into the supervision report (``cds report``): json, csv, html."""
