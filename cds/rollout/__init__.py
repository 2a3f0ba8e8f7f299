"""The catalogue in force in a running server and how a new one replaces it: validated
off the event loop, swapped in as one reference, the last good one kept on refusal."""
