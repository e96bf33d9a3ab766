"""The hosts of a message's links (L{mailapp.postscreen.urls}): parts, encodings, HTML, bounds."""

from __future__ import annotations

import base64
import quopri

from mailapp.postscreen.urls import UrlBounds, UrlHosts, url_hosts


def message(body: bytes, content_type: str = "text/plain; charset=utf-8", encoding: str = "7bit") -> bytes:
    return (
        b"From: a@a.test\r\nTo: b@b.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        + f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n".encode()
        + body
    )


def multipart(*parts: tuple[str, str, bytes]) -> bytes:
    out = b"From: a@a.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    for content_type, encoding, body in parts:
        out += f"--XX\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n".encode() + body + b"\r\n"
    return out + b"--XX--\r\n"


def test_http_and_https_urls_in_plain_text_give_their_registrable_domains() -> None:
    body = b"See http://www.shop.spam.test/buy?x=1 and https://other.example.co.uk:8443/a, or HTTP://Third.test.\r\n"
    assert url_hosts(message(body)).domains == ("spam.test", "example.co.uk", "third.test")


def test_a_bare_www_host_is_a_link() -> None:
    assert url_hosts(message(b"Visit www.cheap.test today (or www.cheap.test/again).\r\n")).domains == ("cheap.test",)


def test_an_email_address_is_not_a_link() -> None:
    assert url_hosts(message(b"Write to bob@www.mail.test or bob@example.test\r\n")) == UrlHosts()


def test_userinfo_and_port_are_not_the_host() -> None:
    assert url_hosts(message(b"http://user:pw@evil.test:8080/\r\n")).domains == ("evil.test",)


def test_each_domain_once_in_the_order_it_first_appears() -> None:
    body = b"http://a.one.test/ http://b.two.test/ http://c.one.test/ www.two.test\r\n"
    assert url_hosts(message(body)).domains == ("one.test", "two.test")


def test_html_href_and_src_attributes_with_entities_and_protocol_relative_links() -> None:
    body = (
        b'<html><body><a href="http://click.spam.test/?a=1&amp;b=2">here</a>'
        b"<img src='//images.pixel.test/p.gif'>"
        b'<a href = "https&#58;//entity.test/">x</a></body></html>\r\n'
    )
    hosts = url_hosts(message(body, "text/html; charset=utf-8"))
    assert set(hosts.domains) == {"spam.test", "pixel.test", "entity.test"}


def test_quoted_printable_is_decoded() -> None:
    body = quopri.encodestring(b"A long line that is soft-broken " * 3 + b"http://qp-encoded.test/path=with=equals\r\n")
    assert url_hosts(message(body, encoding="quoted-printable")).domains == ("qp-encoded.test",)


def test_quoted_printable_soft_break_inside_the_host_is_joined() -> None:
    body = b"http://split-ho=\r\nst.test/\r\n"
    assert url_hosts(message(body, encoding="quoted-printable")).domains == ("split-host.test",)


def test_base64_html_in_a_multipart_message_is_decoded() -> None:
    html = base64.encodebytes(b'<a href="https://b64.test/">x</a>')
    raw = multipart(("text/plain; charset=us-ascii", "7bit", b"plain http://plain.test/"), ("text/html", "base64", html))
    assert url_hosts(raw).domains == ("plain.test", "b64.test")


def test_the_charset_is_applied() -> None:
    body = "Voyez http://caf\u00e9.test/ et http://latin.test/\r\n".encode("latin-1")
    hosts = url_hosts(message(body, "text/plain; charset=iso-8859-1", "8bit"))
    assert hosts.domains == ("xn--caf-dma.test", "latin.test")


def test_attachments_are_not_read() -> None:
    raw = multipart(("application/octet-stream", "7bit", b"http://attached.test/"), ("text/plain", "7bit", b"hi"))
    assert url_hosts(raw) == UrlHosts()


def test_ip_literal_urls_are_addresses() -> None:
    hosts = url_hosts(message(b"http://192.0.2.7/x and http://[2001:DB8::1]:80/ and http://host.test/\r\n"))
    assert hosts == UrlHosts(("host.test",), ("192.0.2.7", "2001:db8::1"))


def test_what_is_no_host_is_skipped() -> None:
    assert url_hosts(message(b"http://localhost/ http://-bad-.test/ http:// https://a..test/\r\n")) == UrlHosts()


def test_at_most_max_hosts_distinct_hosts() -> None:
    body = b" ".join(b"http://d%d.test/" % n for n in range(50))
    hosts = url_hosts(message(body), UrlBounds(max_hosts=5))
    assert hosts.domains == tuple(f"d{n}.test" for n in range(5))


def test_at_most_max_parts_parts() -> None:
    raw = multipart(*[("text/plain", "7bit", b"http://part%d.test/" % n) for n in range(10)])
    assert url_hosts(raw, UrlBounds(max_parts=3)).domains == ("part0.test", "part1.test", "part2.test")


def test_at_most_max_text_bytes_of_text() -> None:
    body = b"x" * 1000 + b" http://late.test/ "
    assert url_hosts(message(body), UrlBounds(max_text_bytes=1000)) == UrlHosts()
    assert url_hosts(message(body), UrlBounds(max_text_bytes=2000)).domains == ("late.test",)


def test_a_message_without_mime_headers_is_plain_text() -> None:
    assert url_hosts(b"Subject: hi\r\n\r\nhttp://old.test/\r\n").domains == ("old.test",)


def test_a_huge_base64_part_is_decoded_only_as_far_as_the_text_bound() -> None:
    text = b"first http://early.test/ " + b"x" * 4_000_000 + b" http://late.test/"
    raw = message(base64.encodebytes(text).replace(b"\n", b"\r\n"), encoding="base64")
    assert url_hosts(raw, UrlBounds(max_text_bytes=64 * 1024)).domains == ("early.test",)
    assert url_hosts(raw, UrlBounds(max_text_bytes=8 * 1024 * 1024)).domains == ("early.test", "late.test")
