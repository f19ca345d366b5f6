"""The model registry: specs resolve through it, unknown ones are refused with the known forms, and a registered
kind is built with the labeler's options and closed by the labeler only when it is the labeler's own."""

from __future__ import annotations

import pytest

from labelwise import Labeler, Model, ModelConfigError, ModelOptions, get_model, register_model
from labelwise._models import _REGISTRY, ModelAnswer, ModelRequest


class Recorder(Model):
    """Answers with the first label; records how it was built and whether it was closed."""

    def __init__(self, name: str, options: ModelOptions, owned: bool) -> None:
        self.name, self.options, self.owned, self.closed = name, options, owned, False

    async def complete(self, request: ModelRequest) -> ModelAnswer:
        return ModelAnswer('{"labels": ["%s"]}' % request.labels[0], "json", None, {"prompt_tokens": 1})

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def recorder_kind():
    built: list[Recorder] = []

    @register_model("rec", "rec:NAME[:shared]")
    def make(rest: str, options: ModelOptions) -> Model:
        built.append(Recorder(f"rec:{rest}", options, owned=not rest.endswith(":shared")))
        return built[-1]

    yield built
    del _REGISTRY["rec"]


def test_unknown_spec_names_the_known_forms() -> None:
    with pytest.raises(ModelConfigError) as exc:
        get_model("anthropic:claude")
    msg = str(exc.value)
    assert "'anthropic:claude'" in msg and "local:PATH.gguf" in msg and "openai:MODEL" in msg


def test_openai_spec_without_a_name_is_refused() -> None:
    with pytest.raises(ModelConfigError, match="openai:MODEL"):
        get_model("openai:")


def test_registered_kind_gets_the_labeler_options_and_is_closed_when_owned(recorder_kind, corpus) -> None:
    with Labeler("rec:a", examples=corpus, shots=0, base_url="http://127.0.0.1:9/v1", structured="json_object",
                 timeout=7.0) as labeler:
        pred = labeler.label("支持企业研发。")
    (model,) = recorder_kind
    assert model.options.base_url == "http://127.0.0.1:9/v1"
    assert model.options.structured == "json_object" and model.options.timeout == 7.0
    assert model.options.limiter is labeler.limiter
    assert pred.status == "ok" and pred.model == "rec:a" and pred.labels == [labeler.taxonomy.labels[0]]
    assert model.closed


def test_shared_model_is_not_closed_by_a_labeler(recorder_kind, corpus) -> None:
    labeler = Labeler("rec:b:shared", examples=corpus, shots=0)
    labeler.close()
    assert recorder_kind[0].closed is False


def test_model_passed_in_stays_the_callers(corpus) -> None:
    mine = Recorder("rec:mine", ModelOptions(), owned=True)
    Labeler(mine, examples=corpus, shots=0).close()
    assert mine.closed is False
