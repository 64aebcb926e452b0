"""TensorZero's HTTP gateway for the benchmarks' side-by-side row (scripts/bench-chain.sh).

    tensorzero-gateway.py MOCK_PORT WORK_DIR

Writes WORK_DIR/tensorzero.toml (one model, `mock`, on the mock backend's OpenAI API; no
functions, no observability backend: a gateway with no policies), starts the gateway PyPI's
`tensorzero` package ships (its `patch_openai_client` starts the same axum server and
OpenAI-compatible routes from tensorzero-core as the gateway binary, on a tokio runtime of
one worker thread per core), writes its base URL to WORK_DIR/tensorzero.url and serves
until stopped. Clients call POST <base URL>/chat/completions with the model
"tensorzero::model_name::mock".
"""
import pathlib
import sys
import time

from tensorzero import tensorzero as native

mock_port, work = sys.argv[1], pathlib.Path(sys.argv[2])
config = work / "tensorzero.toml"
config.write_text(f"""[models.mock]
routing = ["mock"]

[models.mock.providers.mock]
type = "openai"
model_name = "mock-model"
api_base = "http://127.0.0.1:{mock_port}/v1/"
api_key_location = "none"
""")
gateway = native._start_http_gateway(config_file=str(config), clickhouse_url=None,
                                     postgres_url=None, valkey_url=None, async_setup=False)
part = work / "tensorzero.url.part"
part.write_text(gateway.base_url)
part.rename(work / "tensorzero.url")
while True:
    time.sleep(3600)
