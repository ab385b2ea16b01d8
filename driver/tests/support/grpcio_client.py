"""A plain Python gRPC client (grpcio) calling Warren's CSI socket, as a user's tool would:
`grpc.insecure_channel("unix:///path/csi.sock")`, no generated stubs (the messages are
encoded by hand: they are tiny). grpcio sends the socket path as the HTTP/2 :authority,
which is what Warren's Unix sockets must accept (core/src/endpoint/authority.rs).

Prints one line per call, `<method> <status> <detail>`, for the Rust test to check.
"""
import sys

import grpc


def raw(channel, method):
    return channel.unary_unary(
        method,
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )


def string_field(message, number):
    """The first length-delimited field `number` of a protobuf message, as text."""
    i = 0
    while i < len(message):
        key = message[i]
        i += 1
        wire, field = key & 7, key >> 3
        if wire != 2:
            raise ValueError(f"unexpected wire type {wire}")
        n = 0
        shift = 0
        while True:
            b = message[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if field == number:
            return message[i : i + n].decode()
        i += n
    return ""


def main():
    channel = grpc.insecure_channel(f"unix://{sys.argv[1]}")
    info = raw(channel, "/csi.v1.Identity/GetPluginInfo")(b"", timeout=20)
    print("GetPluginInfo OK", string_field(info, 1), flush=True)
    raw(channel, "/csi.v1.Identity/Probe")(b"", timeout=20)
    print("Probe OK -", flush=True)
    try:
        # An empty CreateVolumeRequest: no name. The CSI spec's answer is INVALID_ARGUMENT.
        raw(channel, "/csi.v1.Controller/CreateVolume")(b"", timeout=20)
        print("CreateVolume OK -", flush=True)
    except grpc.RpcError as e:
        print("CreateVolume", e.code().name, e.details(), flush=True)


if __name__ == "__main__":
    main()
