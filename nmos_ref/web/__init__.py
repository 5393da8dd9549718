"""The shared HTTP floor: the NMOS error and its JSON answers (`errors`, `responses`), the resources above the APIs
(`root`), the HTTP/1.1 server edge (`server`), the hot routes' dispatch (`hot_routes`), the client wrapper
(`client`), retry backoff (`backoff`) and debug events that cost nothing when filtered out (`logs`)."""
