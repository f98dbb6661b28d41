"""URLs in text (chainrule.data.urls): the fast pattern against the plain one, hosts of URLs."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from chainrule.data.urls import URL_RE, find_urls, url_domain


def test_find_urls_and_their_domains():
    text = "see http://Shop.Example.COM:80/x?y, WWW.example.org/a and ftp://user@files.example.net./pub."
    urls = find_urls(text)
    assert urls == ["http://Shop.Example.COM:80/x?y,", "WWW.example.org/a", "ftp://user@files.example.net./pub."]
    assert [url_domain(u) for u in urls] == ["shop.example.com", "www.example.org", "files.example.net"]
    assert url_domain("https://a.example.com\\evil") == "a.example.com" and find_urls("no links here") == []
    # the sentence's punctuation is not the host's (a comma gave a token of its own: url:www.x.com,)
    for written in ("www.x.com,", "www.x.com;", "http://www.x.com!", "www.x.com?", "www.x.com.,"):
        assert url_domain(written) == "www.x.com", written


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("hHtTpPsSfFwW:/.x <")), max_size=40))
def test_url_pattern_matches_the_plain_one(text):
    plain = r"""(?:[hH][tT][tT][pP][sS]?://|[fF][tT][pP]://|[wW][wW][wW]\.)[^\s<>"'()\[\]{}]+"""
    assert URL_RE.findall(text) == re.findall(plain, text)
