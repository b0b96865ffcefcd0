"""The web page in a real browser: a tiny trained model, exported, served on 127.0.0.1, sampled greedily by Debian's
headless Chromium through Playwright; the page's tokens must be the Python sampler's, and diff-generate's text.

Needs `apt-get install chromium`, `pip install -e .[web]` and `npm ci` in web/ (`.ci/run` does all three).
"""

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

from conftest import DFF, make_byte_tokenizer, make_tiny_llama
from diff_trainer.cli import export_onnx
from diff_trainer.cli import generate as generate_cli
from diff_trainer.cli.serve_demo import RUNTIME_DIR, make_server
from diff_trainer.diffusion.forward import mask_tokens, sample_times
from diff_trainer.diffusion.losses import masked_diffusion_loss
from diff_trainer.diffusion.schedules import get_schedule
from diff_trainer.diffusion_config import write_diffusion_config
from diff_trainer.sampling.masked import generate
from diff_trainer.sampling.render import TokenPieces
from diff_trainer.sampling.settings import sampler_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RECORDS = [
    "def len(obj)<DFF>Return the number of items in a container.",
    "def abs(x)<DFF>Return the absolute value of the argument.",
    "def json.dumps(obj)<DFF>Serialize obj to a JSON formatted str.",
    "def os.getcwd()<DFF>Return a string representing the current working directory.",
]
PROMPT = "def len(obj)"
WEB_EXTRA = "needs the [web] extra: pip install -e '.[web]'"
for _module in ("playwright", "onnx", "onnxscript"):  # drives Chromium; diff-export-onnx writes the page's model
    pytest.importorskip(_module, reason=WEB_EXTRA)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.skipif(not (RUNTIME_DIR / "ort.wasm.min.mjs").is_file(), reason="needs `npm ci` in web/"),
]


def train_tiny_model(tokenizer, steps: int = 400):
    """A 2-layer Llama trained briefly with the masked-diffusion loss on RECORDS (answers only, EOS padded)."""
    torch.manual_seed(0)
    model = make_tiny_llama(len(tokenizer), hidden_size=64, intermediate_size=128, max_position_embeddings=96).train()
    rows = [tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_id] for r in RECORDS]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows])
    dff = tokenizer.convert_tokens_to_ids(DFF)
    maskable = (input_ids == dff).int().cumsum(-1).bool() & (input_ids != dff)
    schedule = get_schedule("linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch, batch_maskable = input_ids.repeat(4, 1), maskable.repeat(4, 1)
        t = sample_times(len(batch), generator=generator)
        noisy, masked = mask_tokens(batch, batch_maskable, schedule.mask_prob(t), tokenizer.mask_token_id, generator)
        logits = model(input_ids=noisy).logits
        loss = masked_diffusion_loss(logits, batch, masked, batch_maskable, schedule.loss_weight(t), "llada_sft")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=1e-3,
        dff_token=DFF,
    )
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint dir, export dir, model, tokenizer) of a tiny trained model."""
    root = tmp_path_factory.mktemp("browser")
    tokenizer = make_byte_tokenizer()
    model = train_tiny_model(tokenizer)
    model.save_pretrained(root / "checkpoint")
    tokenizer.save_pretrained(root / "checkpoint")
    export_onnx.main(
        [
            "--model",
            str(root / "checkpoint"),
            "--output",
            str(root / "export"),
            "--append_dff",
            "--prompt",
            PROMPT,
            "--gen_length",
            "48",
            "--block_length",
            "16",
        ]
    )
    return root / "checkpoint", root / "export", model, tokenizer


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        profile = Path(__import__("tempfile").mkdtemp(prefix="chromium-profile-"))
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield context
        context.close()
        shutil.rmtree(profile, ignore_errors=True)


def serve(export_dir):
    server = make_server(export_dir, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def run_page(context, url, settings: dict, screenshot: Path | None = None):
    """Fill the form, generate, wait; (generated ids, completion text, progress line, the trace's last frame as
    (text, class) per span)."""
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=120_000)
    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#error")
    for name, value in settings.items():
        page.fill(f"#{name}", str(value))
    page.click("#generate")
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=120_000)
    assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#error")
    ids = json.loads(page.get_attribute("#completion", "data-ids"))
    spans = page.eval_on_selector_all("#sequence span", "spans => spans.map(s => [s.textContent, s.className])")
    result = ids, page.inner_text("#completion"), page.inner_text("#progress"), [tuple(span) for span in spans]
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=True)
    assert errors == []
    page.close()
    return result


@pytest.mark.parametrize(
    "flags",
    [
        {"gen_length": 48, "steps": 24, "block_length": 16},
        {"gen_length": 32, "block_length": 8, "threshold": 0.6},
        {"gen_length": 16, "steps": 16, "suffix": " of x."},
    ],
)
def test_page_samples_the_same_tokens_as_python(trained, browser, tmp_path, flags):
    checkpoint, export_dir, model, tokenizer = trained
    server, url = serve(export_dir)
    screenshot = tmp_path / "page.png"
    try:
        ids, text, progress, trace = run_page(
            browser,
            url,
            {**flags, "threshold": flags.get("threshold", ""), "suffix": flags.get("suffix", "")},
            screenshot=screenshot,
        )
    finally:
        server.shutdown()
        server.server_close()

    args = generate_cli.build_parser().parse_args(
        [
            "--model",
            str(checkpoint),
            "--prompt",
            PROMPT,
            "--append_dff",
            "--output",
            str(tmp_path / "out.jsonl"),
            *[f"--{k}={v}" for k, v in flags.items()],
        ]
    )
    config = sampler_for(model.config.diffusion_config, tokenizer, **generate_cli.sampler_flags(args))
    prompt_ids = generate_cli.prepare_prompts(args, tokenizer, model.config.diffusion_config, [PROMPT])
    suffix_ids = generate_cli.encode_suffix(tokenizer, args.suffix)
    expected = generate(model, prompt_ids, config, suffix_ids=suffix_ids).generated[0].tolist()
    assert ids == expected

    generate_cli.main(
        [
            "--model",
            str(checkpoint),
            "--prompt",
            PROMPT,
            "--append_dff",
            "--output",
            str(tmp_path / "out.jsonl"),
            *[f"--{k}={v}" for k, v in flags.items()],
        ]
    )
    record = json.loads((tmp_path / "out.jsonl").read_text())
    assert text == record["completion"]
    assert len(set(ids)) >= 3  # not a constant output: the comparison sees the sampler's choices
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tokens/s" in progress
    assert_padding_drawn_as_padding(trace, ids, tokenizer, len(suffix_ids))
    if flags["gen_length"] == 48:
        assert tokenizer.eos_token_id in ids  # the answer ends inside the 48 tokens: the trace shows its padding


def assert_padding_drawn_as_padding(trace, ids, tokenizer, suffix_length):
    """The final frame's generated part: the tokens' pieces up to the first EOS, which is drawn once (class "end"),
    then padding: a dim `·` for each further EOS; the suffix keeps the prompt's colour."""
    pieces = TokenPieces(tokenizer)
    eos = tokenizer.eos_token_id
    trace = [(text, " ".join(c for c in classes.split() if c != "new")) for text, classes in trace]  # step highlight
    start, stop = len(trace) - suffix_length - len(ids), len(trace) - suffix_length
    assert {classes for _, classes in trace[:start] + trace[stop:]} == {"prompt"}
    generated = trace[start:stop]
    if eos not in ids:
        assert generated == [(pieces(i), "") for i in ids]
        return
    end = ids.index(eos)
    assert generated[: end + 1] == [(pieces(i), "") for i in ids[:end]] + [(pieces(eos), "end")]
    assert generated[end + 1 :] == [("·" if i == eos else pieces(i), "pad") for i in ids[end + 1 :]]
    assert sum(text == pieces(eos) for text, _ in trace) == 1


def page_error(context, export_dir, blocked: str | None = None) -> str:
    """Open the page on `export_dir` (requests matching `blocked` aborted); the error it shows once loading ends,
    after checking that it is in the error state with Generate disabled."""
    server, url = serve(export_dir)
    try:
        page = context.new_page()
        if blocked is not None:
            page.route(blocked, lambda route: route.abort())
        page.goto(url)
        page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=120_000)
        assert page.evaluate("document.body.dataset.state") == "error"
        assert page.is_visible("#error")
        assert page.is_disabled("#generate")
        message = page.inner_text("#error")
        page.close()
        return message
    finally:
        server.shutdown()
        server.server_close()


def test_a_model_that_fails_to_load_is_reported_on_the_page(trained, browser, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained[1], broken)
    (broken / "model.onnx").write_bytes(b"this is not an ONNX file")
    assert "onnxruntime-web could not load" in page_error(browser, broken)


def test_a_runtime_that_cannot_be_fetched_is_reported_on_the_page(trained, browser):
    message = page_error(browser, trained[1], blocked="**/node_modules/onnxruntime-web/**")  # as without `npm ci`
    assert "Run `npm ci` in web/" in message
