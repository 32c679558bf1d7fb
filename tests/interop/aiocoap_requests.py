"""Send OSCORE requests to a Hearth hub with aiocoap, as an exported sensor.

usage: aiocoap_requests.py CONTEXT_DIR BASE_URI ITEM...
ITEM is NAME=VALUE (POST a SenML reading to /r) or get:/PATH (GET that path).
Prints one line per request: the response code (e.g. "2.04 Changed") or "ERROR <text>".
"""
import asyncio
import sys
import time

import aiocoap
import cbor2


async def main(ctx_dir, base, items):
    ctx = await aiocoap.Context.create_client_context()
    ctx.client_credentials.load_from_dict({"coap://127.0.0.1*": {"oscore": {"basedir": ctx_dir + "/"}}})
    for item in items:
        if item.startswith("get:"):
            msg = aiocoap.Message(code=aiocoap.GET, uri=base + item[4:])
        else:
            name, value = item.split("=", 1)
            pack = [{0: name, 1: "Cel", 2: float(value), 6: time.time()}]
            msg = aiocoap.Message(code=aiocoap.POST, uri=base + "/r", payload=cbor2.dumps(pack), content_format=112)
        try:
            resp = await asyncio.wait_for(ctx.request(msg).response, timeout=20)
            print(str(resp.code), flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure kind as one line
            print("ERROR", type(e).__name__, e, flush=True)
    await ctx.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
