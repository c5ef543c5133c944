"""An insecure gRPC Echo server on 127.0.0.1 for proxy tests.

Prints `PORT <n>` as its first line, then serves until killed.
"""
import argparse
from concurrent import futures

import grpc

import stubs

pb, pb_grpc = stubs.load()


class Echo(pb_grpc.EchoServicer):
    def Unary(self, request, context):
        if request.text == "fail":
            context.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail")
        return pb.Msg(text=request.text, payload=request.payload)

    def ServerStream(self, request, context):
        for i in range(5):
            yield pb.Msg(text=f"{request.text} {i}")

    def BidiStream(self, request_iterator, context):
        for msg in request_iterator:
            yield pb.Msg(text=msg.text, payload=msg.payload)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
