"""SMART Backend Services client: a token by client_credentials + private_key_jwt (RS384), then one write.

    python examples/auth/backend_client.py --base http://localhost:8080/fhir --client-id lab-42 --key lab-42.pem

Make the key pair and the JWKS to register with::

    python examples/auth/backend_client.py --make-key lab-42.pem > lab-42.jwks.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import RSAKey


def make_key(path: Path) -> None:
    key = RSAKey.generate_key(3072, auto_kid=True)
    path.write_bytes(key.as_pem(private=True))
    path.chmod(0o600)
    public = key.as_dict(private=False)
    public.update({"alg": "RS384", "use": "sig"})
    json.dump({"keys": [public]}, sys.stdout, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://localhost:8080/fhir")
    ap.add_argument("--client-id")
    ap.add_argument("--key", type=Path)
    ap.add_argument("--make-key", type=Path)
    ap.add_argument("--patient", default="example")
    args = ap.parse_args()
    if args.make_key:
        make_key(args.make_key)
        return
    key = RSAKey.import_key(args.key.read_bytes())
    key.ensure_kid()
    conf = httpx.get(f"{args.base}/.well-known/smart-configuration").json()
    token_url = conf["token_endpoint"]
    auth = PrivateKeyJWT(token_url, alg="RS384", headers={"kid": key.kid}, claims={"exp": int(time.time()) + 240})
    with OAuth2Session(args.client_id, key, token_endpoint_auth_method=auth,
                      scope="system/DocumentReference.c") as client:
        token = client.fetch_token(token_url, grant_type="client_credentials")
        print(f"token: scope={token['scope']} expires_in={token['expires_in']}", file=sys.stderr)
        doc = {"resourceType": "DocumentReference", "status": "current",
               "subject": {"reference": f"Patient/{args.patient}"},
               "content": [{"attachment": {"contentType": "text/plain", "data": "aGVsbG8="}}]}
        r = client.post(f"{args.base}/DocumentReference", json=doc,
                        headers={"Content-Type": "application/fhir+json"})
        print(r.status_code, r.headers.get("location"))


if __name__ == "__main__":
    main()
