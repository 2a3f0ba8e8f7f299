"""Who may call what and how they are known: roles and credentials, the transport's
TLS and protected-mode listen policy, and the keyed pseudonyms of patients and clinicians."""
