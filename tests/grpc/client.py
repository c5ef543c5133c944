"""Exercises the Echo server through a target (a proxy): unary, server streaming, bidirectional
streaming and an error status. Prints one OK line and exits 0, or says what went wrong and exits 1.
"""
import argparse
import sys

import grpc

import stubs

pb, pb_grpc = stubs.load()
TIMEOUT = 10


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--authority")
    parser.add_argument("--once", choices=["Unary", "ServerStream"], help="make one call and print its status: STATUS OK, or STATUS <code name>")
    args = parser.parse_args()
    options = [("grpc.default_authority", args.authority)] if args.authority else []
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = pb_grpc.EchoStub(channel)
        if args.once:
            try:
                if args.once == "Unary":
                    stub.Unary(pb.Msg(text="once"), timeout=TIMEOUT)
                else:
                    list(stub.ServerStream(pb.Msg(text="once"), timeout=TIMEOUT))
                print("STATUS OK")
            except grpc.RpcError as e:
                print(f"STATUS {e.code().name} {e.details()}")
            return
        for i in range(20):
            payload = bytes([i]) * (i * 100)
            rsp = stub.Unary(pb.Msg(text=f"hello {i}", payload=payload), timeout=TIMEOUT)
            if rsp.text != f"hello {i}" or rsp.payload != payload:
                sys.exit(f"unary {i}: unexpected echo {rsp.text!r}")
        streamed = [m.text for m in stub.ServerStream(pb.Msg(text="s"), timeout=TIMEOUT)]
        if streamed != [f"s {i}" for i in range(5)]:
            sys.exit(f"server stream: {streamed}")
        sent = [pb.Msg(text=f"b{i}") for i in range(10)]
        echoed = [m.text for m in stub.BidiStream(iter(sent), timeout=TIMEOUT)]
        if echoed != [m.text for m in sent]:
            sys.exit(f"bidi stream: {echoed}")
        try:
            stub.Unary(pb.Msg(text="fail"), timeout=TIMEOUT)
            sys.exit("the failing call succeeded")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                sys.exit(f"expected UNAVAILABLE, got {e.code()}: {e.details()}")
            status = e.code().name
    print(f"OK unary=20 server_stream={len(streamed)} bidi={len(echoed)} status={status}")


if __name__ == "__main__":
    main()
