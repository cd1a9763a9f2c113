#!/usr/bin/python3
"""Key material and tokens for the load harness (Debian's python3-jwt and
python3-cryptography; no network).

Writes into OUT_DIR:
  key.pem, pub.pem          RSA-2048 key pair (pub.pem is what HAProxy loads)
  jwks.json                 the public key as a JWKS (kid "bench-1"), for scopegate
  openid-configuration.json discovery document naming jwks.json and /introspect
  introspection.json        RFC 7662 answer: active, full-access scope, far-future exp
  token.jwt                 one RS256 access token (the cached contenders)
  pool.txt                  POOL distinct RS256 tokens, one a line (uncached contender)
  expired.jwt               same claims, exp in the past (must be refused)
  forged.jwt                same claims and kid, signed by another key (must be refused)
  opaque.txt                an opaque token for the introspection contender
  token.sha256              SHA-256 of token.jwt, for [[auth.static]]
"""
import argparse
import base64
import hashlib
import json
import os
import secrets
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SCOPE = "urn:matrix:client:api:*"


def b64u(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--audience", default="scopegate-bench")
    ap.add_argument("--pool", type=int, default=1024)
    ap.add_argument("--lifetime", type=int, default=86400, help="seconds until exp")
    args = ap.parse_args()
    out = args.out_dir
    os.makedirs(out, exist_ok=True)

    def write(name: str, data: str) -> None:
        with open(os.path.join(out, name), "w") as f:
            f.write(data)

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key()
    write("key.pem", pem.decode())
    write(
        "pub.pem",
        pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
    )
    numbers = pub.public_numbers()
    kid = "bench-1"
    write(
        "jwks.json",
        json.dumps(
            {
                "keys": [
                    {
                        "kty": "RSA",
                        "use": "sig",
                        "alg": "RS256",
                        "kid": kid,
                        "n": b64u(numbers.n),
                        "e": b64u(numbers.e),
                    }
                ]
            }
        ),
    )
    iss = args.issuer.rstrip("/")
    write(
        "openid-configuration.json",
        json.dumps(
            {
                "issuer": args.issuer,
                "jwks_uri": f"{iss}/jwks.json",
                "introspection_endpoint": f"{iss}/introspect",
                "token_endpoint": f"{iss}/token",
                "authorization_endpoint": f"{iss}/authorize",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        ),
    )
    far = 4102444800  # 2100-01-01
    write(
        "introspection.json",
        json.dumps(
            {
                "active": True,
                "scope": SCOPE,
                "username": "alice",
                "sub": "alice",
                "client_id": "bench-client",
                "token_type": "Bearer",
                "exp": far,
            },
            separators=(",", ":"),
        ),
    )

    now = int(time.time())

    def claims(jti: str, exp: int) -> dict:
        return {
            "iss": args.issuer,
            "aud": args.audience,
            "sub": "alice",
            "client_id": "bench-client",
            "scope": f"openid {SCOPE} urn:matrix:client:device:BENCHDEV",
            "iat": now - 10,
            "nbf": now - 10,
            "exp": exp,
            "jti": jti,
        }

    def sign(c: dict, k=key) -> str:
        return jwt.encode(c, k, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})

    token = sign(claims("main", now + args.lifetime))
    write("token.jwt", token)
    write("token.sha256", hashlib.sha256(token.encode()).hexdigest())
    write("expired.jwt", sign(claims("expired", now - 3600)))
    write("forged.jwt", sign(claims("forged", now + args.lifetime), other))
    write("opaque.txt", "bench_" + secrets.token_urlsafe(30))
    with open(os.path.join(out, "pool.txt"), "w") as f:
        for i in range(args.pool):
            f.write(sign(claims(f"pool-{i}", now + args.lifetime)) + "\n")


if __name__ == "__main__":
    main()
