"""A real gRPC peer for the end-to-end tests, using grpcio with raw-bytes messages (no codegen).

  grpc_echo.py server PORT   serve test.Echo/{Unary,ServerStream,ClientStream,Bidi,Fail}; prints "ready"
  grpc_echo.py client TARGET call each method through TARGET and check the answers; exit 0 if all match
"""
import sys
from concurrent import futures

import grpc

IDENTITY = dict(request_deserializer=None, response_serializer=None)


def unary(request, context):
    context.set_trailing_metadata((("x-trailer", "unary"),))
    return b"echo:" + request


def server_stream(request, context):
    for i in range(3):
        yield request + b":" + str(i).encode()


def client_stream(request_iterator, context):
    return b"+".join(request_iterator)


def bidi(request_iterator, context):
    for request in request_iterator:
        yield request.upper()


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def serve(port):
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, **IDENTITY),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, **IDENTITY),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, **IDENTITY),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, **IDENTITY),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, **IDENTITY),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def check(label, got, want):
    if got != want:
        print(f"FAIL {label}: got {got!r}, want {want!r}", flush=True)
        sys.exit(1)
    print(f"ok {label}", flush=True)


def client(target):
    with grpc.insecure_channel(target) as channel:
        resp, call = channel.unary_unary("/test.Echo/Unary").with_call(b"hi", timeout=10)
        check("unary", resp, b"echo:hi")
        check("unary trailer", dict(call.trailing_metadata()).get("x-trailer"), "unary")
        check("server stream", list(channel.unary_stream("/test.Echo/ServerStream")(b"s", timeout=10)), [b"s:0", b"s:1", b"s:2"])
        check("client stream", channel.stream_unary("/test.Echo/ClientStream")(iter([b"a", b"b", b"c"]), timeout=10), b"a+b+c")
        check("bidi", list(channel.stream_stream("/test.Echo/Bidi")(iter([b"x", b"y"]), timeout=10)), [b"X", b"Y"])
        try:
            channel.unary_unary("/test.Echo/Fail")(b"", timeout=10)
            check("fail status", "OK", "NOT_FOUND")
        except grpc.RpcError as e:
            check("fail status", e.code(), grpc.StatusCode.NOT_FOUND)
            check("fail details", e.details(), "no such thing")


if __name__ == "__main__":
    {"server": lambda a: serve(int(a)), "client": client}[sys.argv[1]](sys.argv[2])
