"""Measures the nmos-ref registry over loopback and prints figures to paste into a note.

Run it as `python benchmarks/bench_registry.py` (the command line is `cli`). By default it starts the registry itself
(`twistd -n --pidfile= nmos-ref registry --listen tcp:PORT:...`) on a free loopback port, waits until
`GET /x-nmos/registration/v1.3/` answers, runs the phases and stops it by its PID. The figure that matters is the
server's CPU per request, read from /proc/<pid>/stat: wall-clock rates on a shared 2-core VM vary a lot between
identical runs, CPU time much less. See benchmarks/README.md.

The client is deliberately cheap (one thread per persistent HTTP/1.1 connection, requests built as bytes before the
clock starts, a minimal response parser) so that it leaves the second core to itself and does not starve the server.
Every loop runs over a fixed list of work and checks one overall deadline; the run always stops by itself.

The query phase measures the Query API at 50,000 resources (label query, id lookup, paging walks, unpaged v1.0 lists)
one request at a time, with nothing else sent to the registry meanwhile.

The websocket phase measures Query API subscriptions: the time from a registration's answer to its grain at 1 and at
50 subscribers, then 50 subscribers connecting at once to 3,000 Nodes that keep heartbeating (from a child process,
one connection per Node) while changes flow: initial sync time, heartbeat waits, expired Nodes, lost notifications,
the registry's peak RSS and each side's share of the machine during the syncs.

The storm phase registers one big Node (2,500 resources) as fast as the registry takes them while 3,000 others
heartbeat: its registration time, the others' worst heartbeat wait, expiries, the longest reactor turn the registry
logged. The register phase also gives the registry's RSS growth per registered resource, and every run its idle RSS
at start and its peak RSS (issue 13's goals 1-5; benchmarks/README.md has one command per goal).

The modules, one job each: `synthetic` (the synthetic Nodes), `http` (the keep-alive HTTP client), `server` (the
registry under test), `harness` (what every phase runs on), `query_api` (reading the Query API's answers),
`phase_register` (register, heartbeat), `phase_query`, `ws_client` (the WebSocket subscribers), `heartbeats` (the
heartbeat process of the websocket and storm phases), `ws_load` (the websocket load scenario), `phase_websocket`,
`phase_storm`, `report`, `cli`.
"""
