"""Query API WebSocket subscriptions: the model (`subscriptions`) and the Autobahn sockets (`protocol`)."""
