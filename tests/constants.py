"""Values several test modules share (never real credentials)."""

from __future__ import annotations

#: A Tinybird workspace admin token (the HS256 key of local minting): long enough that PyJWT
#: does not warn about a short HMAC key.
ADMIN_TOKEN = "p.test-admin-token-of-the-workspace-" + "0123456789abcdef" * 3
ANONYMOUS_TOKEN = "p.anonymous-read-token-" + "fedcba9876543210" * 3
SCOPES = [
    {
        "type": "PIPES:READ",
        "resource": "analytics_hits",
        "fixed_params": {"org": "{{org.slug}}", "user": "{{user.id}}"},
    }
]
ORG = {"id": "org_1", "slug": "acme", "role": "admin", "permissions": ["org:reports:read"]}
