"""
Outbound mail: the durable queue (L{mailapp.relay.queue}), the next hops
(L{mailapp.relay.routing}), the SMTP client (L{mailapp.relay.client}), the
delivery status notifications (L{mailapp.dsn} builds them,
L{mailapp.relay.notify} sends them), the admin requests
(L{mailapp.relay.control}) and the manager that runs them
(L{mailapp.relay.manager}, its workers in L{mailapp.relay.workers}).
"""
