"""hpfaas in five minutes: run Python functions and shell commands on an endpoint.

Start a service with a local endpoint first; it writes ~/.hpfaas/up.json,
which is where `Client()` and `Executor()` find it:

    hpfaas up &
    python examples/quickstart.py
"""

import time

from hpfaas import Client, Executor, ShellFunction, TaskExecutionFailed

CALLS = 1000


# Functions are sent as source text: define them at module level and import
# what they need inside, as they run in another process.
def estimate_pi(samples):
    import random

    inside = sum(random.random() ** 2 + random.random() ** 2 <= 1 for _ in range(samples))
    return 4 * inside / samples


def divide(a, b):
    return a / b


def main():
    client = Client()  # HPFAAS_URL/HPFAAS_TOKEN, else $HPFAAS_HOME/up.json
    print(f"service {client.url}, endpoint {client.default_endpoint_id}")

    with Executor(client=client) as ex:  # the endpoint of up.json
        # One call: submit returns a concurrent.futures.Future.
        print("one call:", ex.submit(estimate_pi, 10_000).result())

        # Many calls: map batches the submissions and streams the results back.
        started = time.perf_counter()
        estimates = list(ex.map(estimate_pi, [100] * CALLS))
        elapsed = time.perf_counter() - started
        print(f"{CALLS} calls in {elapsed:.2f} s: {CALLS / elapsed:,.0f} tasks/s")
        print(f"mean of the estimates: {sum(estimates) / len(estimates):.3f}")

        # A shell command; keyword arguments fill its {placeholders}.
        hello = ex.submit(ShellFunction("echo hello from {where}"), where="the endpoint")
        shell = hello.result()
        print(f"shell: {shell.stdout.strip()!r} (exit status {shell.returncode})")

        # A remote exception comes back as TaskExecutionFailed.
        try:
            ex.submit(divide, 1, 0).result()
        except TaskExecutionFailed as exc:
            print(f"remote error, as expected: {exc.remote_type}: {exc.remote_message}")

    print(f"summary: {CALLS + 3} tasks run on endpoint {ex.endpoint_id}")


if __name__ == "__main__":
    main()
