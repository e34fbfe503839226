"""A proxyless gRPC client: grpcio's own xDS resolver, configured by the control plane at XDS.

  xds_client.py XDS TARGET COUNT

Calls xds:///TARGET COUNT times, 50 ms apart, and prints which backend answered each call (the
`x-served-by` header), one per line.
"""
import json
import os
import sys
import tempfile
import time

xds, target, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
bootstrap = {
    "xds_servers": [{"server_uri": xds, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
    "node": {"id": "proxyless-test", "cluster": "proxyless"},
}
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(bootstrap, f)
os.environ["GRPC_XDS_BOOTSTRAP"] = f.name

import grpc  # noqa: E402  (reads GRPC_XDS_BOOTSTRAP)

with grpc.insecure_channel(f"xds:///{target}") as channel:
    call = channel.unary_unary("/pkg.Echo/Call")
    for _ in range(count):
        reply, info = call.with_call(b"hello", timeout=10)
        assert reply == b"hello", reply
        print(dict(info.initial_metadata()).get("x-served-by"), flush=True)
        time.sleep(0.05)
os.unlink(f.name)
