"""The interactive chat: a prompt_toolkit line editor, streamed answers, and the slash commands.

Each model keeps its own history (its own answers); a new prompt goes to every model. Ctrl-C during an
answer stops it (the partial answer stays in the history: the model sees what you saw) and the chat goes
on; Ctrl-C at the prompt clears the line; Ctrl-D or /quit ends the chat.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from ..config import ft_home
from ..ui import Reporter
from . import render
from .compare import Candidate, Settings, answer

HELP = """\
/system              show the system prompt and whether it is on
/system on|off       use it or not (the run's training prompt, or the one you set)
/system run          back to the run's training prompt
/system TEXT         set it (and turn it on)
/prompt              show the conversation as the model sees it (its chat template)
/reset               forget the conversation
/temp X              sampling temperature (0 = greedy)
/greedy              toggle greedy decoding
/max N               tokens per answer at most
/seed N              sampling seed (set before every answer)
/save FILE.jsonl     append the conversation as a messages row (ft eval --prompts, ft train --data)
/load FILE.jsonl [N] continue the conversation of row N (default: the last row)
/help                this list
/quit                leave (or Ctrl-D)"""


class Chat:
    def __init__(self, cands: list[Candidate], settings: Settings, reporter: Reporter):
        self.cands, self.settings, self.reporter = cands, settings, reporter
        self.console = reporter.out

    def say(self, text: str, style: str = "cyan") -> None:
        self.console.print(text, style=style, markup=False, highlight=False)

    # ------------------------------------------------------------------ answers

    def ask(self, text: str) -> None:
        for c in self.cands:
            c.history.append({"role": "user", "content": text})
        self.answer_all()

    def answer_all(self) -> None:
        if render.side_by_side(self.console, len(self.cands)):
            self._answer_columns()
            return
        for c in self.cands:
            if len(self.cands) > 1:
                self.say(f"── {c.name}", "bold")
            stream = answer(c, c.messages(self.settings), self.settings)
            stopped = False
            try:
                for piece in stream:
                    render.write(piece)
            except KeyboardInterrupt:
                stopped = True
            c.history.append({"role": "assistant", "content": stream.text})
            render.write("\n")
            render.print_status(self.console, stream, stopped=stopped)
            if stopped:
                self._fill_unanswered()
                return

    def _answer_columns(self) -> None:
        from rich.live import Live

        names = [c.name for c in self.cands]
        texts = [""] * len(self.cands)
        notes = ["waiting"] * len(self.cands)
        with Live(render.columns(names, texts, notes), console=self.console, refresh_per_second=12) as live:
            for i, c in enumerate(self.cands):
                stream = answer(c, c.messages(self.settings), self.settings)
                notes[i] = "…"
                stopped = False
                try:
                    for piece in stream:
                        texts[i] += piece
                        live.update(render.columns(names, texts, notes))
                except KeyboardInterrupt:
                    stopped = True
                c.history.append({"role": "assistant", "content": stream.text})
                notes[i] = render.status(stream, stopped=stopped)[0]
                live.update(render.columns(names, texts, notes), refresh=True)
                if stopped:
                    self._fill_unanswered()
                    return

    def _fill_unanswered(self) -> None:
        """After Ctrl-C, the models not yet asked drop the question: every history ends on an answer."""
        for c in self.cands:
            if c.history and c.history[-1]["role"] == "user":
                c.history.pop()

    # ----------------------------------------------------------------- commands

    def command(self, line: str) -> bool:
        """Run a slash command; False to leave the chat."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        handler = COMMANDS.get(name.lower())
        if handler is None:
            self.say(f"unknown command /{name}; /help lists them", "yellow")
            return True
        try:
            return handler(self, arg) is not False
        except ValueError as e:
            self.say(str(e), "yellow")
            return True

    def system(self, arg: str) -> None:
        s = self.settings
        if arg in ("on", "off"):
            s.use_system = arg == "on"
        elif arg == "run":
            s.system, s.use_system = None, True
        elif arg:
            s.system, s.use_system = arg, True
        for c in self.cands:
            text = c.system_prompt(Settings(system=s.system, use_system=True))
            origin = "set in this chat" if s.system else ("the run's" if c.run_system else "none")
            state = "on" if s.use_system and text else "off"
            who = f"{c.name}: " if len(self.cands) > 1 else ""
            self.say(f"{who}system prompt {state} ({origin}): {text or '-'}")

    def prompt(self, _: str) -> None:
        for c in self.cands:
            messages = c.messages(self.settings)
            if len(self.cands) > 1:
                self.say(f"── {c.name}", "bold")
            if not messages:
                self.say("(empty: no system prompt and no turns yet)")
            elif getattr(c.tokenizer, "chat_template", None):
                self.console.print(c.tokenizer.apply_chat_template(messages, tokenize=False), markup=False,
                                   highlight=False, style="dim")
            else:
                self.console.print("\n\n".join(m["content"] for m in messages), markup=False, style="dim")

    def reset(self, _: str) -> None:
        for c in self.cands:
            c.history.clear()
        self.say("conversation forgotten")

    def temp(self, arg: str) -> None:
        self.settings.temperature = _number(arg, float, "/temp X", low=0)
        self.settings.greedy = self.settings.temperature == 0
        self.say(self.settings.describe())

    def greedy(self, _: str) -> None:
        self.settings.greedy = not self.settings.greedy
        if not self.settings.greedy and self.settings.temperature == 0:
            self.settings.temperature = 0.7
        self.say(self.settings.describe())

    def max(self, arg: str) -> None:
        self.settings.max_new_tokens = _number(arg, int, "/max N", low=1)
        self.say(self.settings.describe())

    def seed(self, arg: str) -> None:
        self.settings.seed = _number(arg, int, "/seed N")
        self.say(self.settings.describe())

    def save(self, arg: str) -> None:
        from ..jsonl import dumps

        path = _jsonl_path(arg, "/save FILE.jsonl")
        rows = [c.messages(self.settings) for c in self.cands if c.history]
        if not rows:
            raise ValueError("nothing to save yet")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            for c, messages in zip(self.cands, rows):
                row = {"messages": messages}
                if len(self.cands) > 1:
                    row["meta"] = {"candidate": c.name}
                f.write(dumps(row))
        self.say(f"appended {len(rows)} conversation(s) to {path}")

    def load(self, arg: str) -> None:
        from ..errors import DataError
        from ..jsonl import read_rows
        from ..sharegpt import normalize_turns

        file, _, n = arg.partition(" ")
        path = _jsonl_path(file, "/load FILE.jsonl [N]")
        try:
            rows = [row for _, row in read_rows(path)]
        except (DataError, OSError) as e:
            raise ValueError(f"/load: {e}") from None
        if not rows:
            raise ValueError(f"/load: {path} has no rows")
        index = _number(n, int, "/load FILE.jsonl N", low=1) - 1 if n.strip() else len(rows) - 1
        if index >= len(rows):
            raise ValueError(f"/load: {path} has {len(rows)} rows")
        row = rows[index]
        key = "messages" if "messages" in row else "conversations"
        try:
            turns = normalize_turns(row.get(key), key)
        except ValueError as e:
            if "does not end with an assistant turn" not in str(e):
                raise ValueError(f"/load: row {index + 1}: {e}") from None
            # a conversation waiting for its answer: validated as if answered, then answered here
            turns = normalize_turns(list(row[key]) + [{"role": "assistant", "content": "-"}], key)[:-1]
        if turns and turns[0][0] == "system":
            self.settings.system, self.settings.use_system = turns[0][1], True
            turns = turns[1:]
        for c in self.cands:
            c.history[:] = [{"role": r, "content": t} for r, t in turns]
        self.say(f"loaded row {index + 1} of {path}: {len(turns)} turn(s)")
        if turns and turns[-1][0] == "user":
            self.answer_all()

    def help(self, _: str) -> None:
        self.say(HELP, "")

    def quit(self, _: str) -> bool:
        return False


COMMANDS = {"system": Chat.system, "prompt": Chat.prompt, "reset": Chat.reset, "temp": Chat.temp,
            "greedy": Chat.greedy, "max": Chat.max, "seed": Chat.seed, "save": Chat.save, "load": Chat.load,
            "help": Chat.help, "quit": Chat.quit, "exit": Chat.quit}


def _number(text: str, kind, usage: str, low: float | None = None):
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"usage: {usage}") from None
    if low is not None and value < low:
        raise ValueError(f"usage: {usage} (at least {low:g})")
    return value


def _jsonl_path(text: str, usage: str) -> Path:
    if not text:
        raise ValueError(f"usage: {usage}")
    path = Path(text).expanduser()
    if not path.name.endswith(".jsonl"):  # ft eval --prompts reads any other name as text, a prompt per line
        raise ValueError(f"{usage}: the file name must end in .jsonl")
    return path


def chat(cands: list[Candidate], settings: Settings, reporter: Reporter) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    ft_home().mkdir(parents=True, exist_ok=True)
    session = PromptSession(history=FileHistory(str(ft_home() / "chat_history")))
    # Ctrl-C stops an answer through SIGINT → KeyboardInterrupt. A process started with SIGINT ignored (a
    # shell's background job, nohup, some CI runners) inherits that, and Python then never raises it: the
    # answer would run to its token limit. On a terminal the REPL takes Ctrl-C back for as long as it runs.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _loop(session, cands, settings, reporter)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _loop(session, cands: list[Candidate], settings: Settings, reporter: Reporter) -> None:
    state = Chat(cands, settings, reporter)
    names = ", ".join(f"{c.name} ({c.kind})" for c in cands)
    state.say(f"ft chat · {names} · {settings.describe()} · /help for commands, Ctrl-D to leave", "dim")
    while True:
        try:
            line = session.prompt("you> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not state.command(line):
                break
            continue
        state.ask(line)
