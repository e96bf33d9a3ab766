from twisted.application.service import ServiceMaker

mailapp = ServiceMaker("mailapp", "mailapp.tap", "SMTP, POP3, IMAP4 and webmail over one mailbox store.", "mailapp")
