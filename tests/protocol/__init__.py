"""
Protocol tests: each session over a StringTransport, built through its real
builder from L{mailapp.testing.service_context} (fakes, and a L{task.Clock}
as the reactor), with every reply there synchronously after C{dataReceived}
or after the clock advances. No disk, no thread, no global reactor.
"""
