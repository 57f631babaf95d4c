"""Services run on uvloop where it is installed: the CPU per email depends on it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_service_main_runs_on_uvloop_and_grpc_serves_on_it():
    # A real grpc.aio server and client on the loop run_main gives a service.
    script = textwrap.dedent("""
        import asyncio
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from heraldo.runtime import run_main

        async def main():
            server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest())
            await server.stop(None)
            print(type(asyncio.get_running_loop()).__module__, reply.status)

        run_main(main, what="probe")
    """)
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60, check=True)
    assert finished.stdout.split() == ["uvloop", str(1)]
