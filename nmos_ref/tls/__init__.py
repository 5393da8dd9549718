"""BCP-003-01: the servers' TLS contexts (`server`), OCSP stapling (`ocsp`) and what the process's clients trust
(`trust`)."""
