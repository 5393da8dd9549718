"""IS-10 / BCP-003-02 authorization: bearer-token checks for our APIs (a JWKS cache and a guard resource)."""
