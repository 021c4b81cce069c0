"""`haca chat` and `haca completion`: paid, verified LLM answers from a node's OpenAI-compatible
routes, streamed to the terminal as they come, each followed by its receipt (checked locally: signed
by the node or its attested enclave, committing to this request and exactly this text, charging
the tokens used at the quoted prices)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from haca.cli.common import HomeOption, JsonOption, cli_command, client_home, console, err_console
from haca.cli.inference import KeyOption, NodeOption
from haca.client.sdk import Client, LlmResult, LlmStream
from haca.types.modes import Mode

EXIT_COMMAND = "/exit"

ModelOption = Annotated[str, typer.Option("-m", "--model", help="model name or sha256: id")]
ModeOption = Annotated[
    str | None,
    typer.Option("--mode", help=f"{Mode.TEE.value} or {Mode.VANILLA.value} (default: the node's preferred)"),
]
MaxTokensOption = Annotated[int, typer.Option("--max-tokens", min=1, help="most tokens to generate")]
TemperatureOption = Annotated[float, typer.Option("--temperature", min=0.0, max=2.0)]
TopPOption = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)]
SeedOption = Annotated[int | None, typer.Option("--seed", min=0, help="sampling seed")]
MaxFeeOption = Annotated[
    int | None,
    typer.Option(
        "--max-fee",
        min=0,
        help="most you will authorise for one request (default: whatever it may cost at the model's prices on chain)",
    ),
]


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C ends the command quietly (status 130); an answer cut short is not printed as checked."""
    try:
        yield
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.exit(130)


def _summary(result: LlmResult) -> str:
    u = result.usage
    return (
        f"receipt {result.receipt_id} (checked here)  mode {result.mode}  "
        f"tokens {u['prompt_tokens']} prompt + {u['completion_tokens']} completion  "
        f"fee {result.fee}  {result.finish_reason}  {result.status}"
    )


def _streamed(stream: LlmStream) -> LlmResult:
    """Write the text as it comes, then the receipt's summary line."""
    try:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()
        stream.close()
    assert stream.result is not None
    console.print(_summary(stream.result), style="dim", highlight=False, markup=False)
    return stream.result


def _print_json(result: LlmResult) -> None:
    print(json.dumps(result.to_json()))


@cli_command
def chat(
    model: ModelOption,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="one message, one answer (default: chat on stdin until EOF or /exit)")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="a system message to start with")] = None,
    mode: ModeOption = None,
    max_tokens: MaxTokensOption = 256,
    temperature: TemperatureOption = 1.0,
    top_p: TopPOption = 1.0,
    seed: SeedOption = None,
    max_fee: MaxFeeOption = None,
    node: NodeOption = None,
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Chat with an LLM on a node, paying per request for the tokens used. With --prompt, one
    answer; without, read your lines from stdin (until EOF or /exit), keeping the conversation.
    Each answer streams as it comes, then its receipt; --json prints one JSON object per answer."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    params: dict[str, Any] = {
        "mode": mode,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "max_fee": max_fee,
    }
    with Client.from_home(client_home(home), from_, node) as client, _interruptible():

        def answer(history: list[dict[str, str]]) -> LlmResult:
            if json_out:
                result = client.chat(model, history, **params)
                _print_json(result)
                return result
            return _streamed(client.chat_stream(model, history, **params))

        if prompt is not None:
            answer([*messages, {"role": "user", "content": prompt}])
            return
        _conversation(messages, answer)


def _conversation(messages: list[dict[str, str]], answer: Callable[[list[dict[str, str]]], LlmResult]) -> None:
    """Read user lines from stdin until EOF or /exit; each is answered with the whole conversation."""
    interactive = sys.stdin.isatty()
    if interactive:
        err_console.print(f"chat: one line per message; {EXIT_COMMAND} or Ctrl-D to end", style="dim")
    while True:
        if interactive:
            err_console.print("[bold]you>[/bold] ", end="")
        line = sys.stdin.readline()
        if not line:
            break
        text = line.rstrip("\r\n")
        if text.strip() == EXIT_COMMAND:
            break
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        result = answer(messages)
        messages.append({"role": "assistant", "content": result.text})


@cli_command
def completion(
    model: ModelOption,
    prompt: Annotated[str, typer.Option("--prompt", help="the text to continue")],
    mode: ModeOption = None,
    max_tokens: MaxTokensOption = 256,
    temperature: TemperatureOption = 1.0,
    top_p: TopPOption = 1.0,
    seed: SeedOption = None,
    max_fee: MaxFeeOption = None,
    node: NodeOption = None,
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """A text completion of --prompt from an LLM on a node, streamed, then its receipt."""
    with Client.from_home(client_home(home), from_, node) as client, _interruptible():
        params: dict[str, Any] = {
            "mode": mode,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "max_fee": max_fee,
        }
        if json_out:
            _print_json(client.completion(model, prompt, **params))
        else:
            _streamed(client.completion_stream(model, prompt, **params))
