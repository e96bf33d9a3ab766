"""
End-to-end and on-disk tests: the real Maildir store, the accounts database,
the service in a subprocess, real sockets. What a protocol test over fakes
cannot show (spool files, durability, crashes) is proved here.
"""
