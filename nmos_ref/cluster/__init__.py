"""The registry cluster (issue 14): the etcd v3 client (`etcd`) and the store that shares one registry between
several nmos-ref members through it."""
