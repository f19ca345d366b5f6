"""Scoring every taxonomy label under a prompt with llama.cpp's low-level API (the embedded model's engine).

The labels' tokens form a trie; each trie node is one batch token that belongs to the sequences of every label
passing through it, and returns the logits that score its children (or the terminator after a label). The trie
rides in the same decode as the prompt's last chunk, whose tokens belong to every sequence: one decode scores
all labels. A label's log-probability is the sum of its tokens' log-probabilities plus the log of the
terminator's mass, so a label that is a prefix of another is scored as itself, not as the start of the longer one.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LabelScorer", "chunk_cuts", "CHUNK"]

CHUNK = 512  # most prompt tokens per decode call (see chunk_cuts)
N_SEQ_MAX = 64  # llama.cpp sequences per context: seq 0 holds the prompt, every other one a label
TRIE_MAX = 512  # most label-trie nodes per decode (a larger trie is scored in several decodes)
N_BATCH = CHUNK + TRIE_MAX  # the prompt's last chunk and the first trie in one decode


def chunk_cuts(pieces: Sequence[bytes], chunk: int = CHUNK) -> list[int]:
    """Where a prompt's evaluation is split into decode calls (token offsets, the last one its length).

    The cuts fall after the first blank line (the end of the shared instructions in every bundled prompt) and at
    most `chunk` tokens apart. The KV of the instructions is then reused from the previous prompt, while only
    whole chunks are ever reused, so that every answer is the one a fresh evaluation gives (see `_eval`). Few cuts
    mean few decode calls, each a round of thread synchronisation that a busy machine makes expensive.
    """
    blank = next((i + 1 for i, piece in enumerate(pieces) if b"\n\n" in piece and i + 1 < len(pieces)), None)
    cuts, last = [], 0
    for anchor in ([blank] if blank else []) + [len(pieces)]:
        while anchor - last > chunk:
            last += chunk
            cuts.append(last)
        cuts.append(anchor)
        last = anchor
    return cuts


@dataclass
class _Node:
    """A label-trie node: a token at a depth, the labels (sequence ids) through it, its children."""

    token: int
    depth: int
    seqs: list[int] = field(default_factory=list)
    children: dict[int, _Node] = field(default_factory=dict)
    index: int = -1  # its row in the decode batch


class LabelScorer:
    """The embedded GGUF in one llama.cpp context with room for a prompt and a label trie as parallel sequences."""

    def __init__(self, path: str, *, n_ctx: int = 4096, n_threads: int = 1) -> None:
        import llama_cpp as lc

        self._lc = lc
        lc.llama_backend_init()
        self._model = lc.llama_model_load_from_file(path.encode("utf-8"), lc.llama_model_default_params())
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_threads = params.n_threads_batch = n_threads
        params.n_seq_max = N_SEQ_MAX
        params.kv_unified = True  # one KV buffer: copying the prompt to a label's sequence only tags its cells
        params.swa_full = True  # keep every token for sliding-window layers too, so prefixes can be reused
        params.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, params)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(N_BATCH, 0, N_SEQ_MAX)
        self.n_ctx = n_ctx
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self._pieces: dict[int, bytes] = {}
        self._ends: dict[bytes, np.ndarray] = {}
        self._path_cache: dict[tuple[str, tuple[str, ...]], list[list[int]]] = {}
        self._kv: list[int] = []  # the tokens whose KV sequence 0 holds
        self._cuts: list[int] = []  # and where their evaluation was split
        self._lock = threading.Lock()
        self.stats = {"prompts": 0, "prompt_tokens": 0, "evaluated_tokens": 0, "scored_tokens": 0}  # running totals

    # ------------------------------------------------------------------ tokens

    def tokenize(self, text: str, *, bos: bool) -> list[int]:
        """Token ids of `text` (special-token syntax is treated as plain text)."""
        data = text.encode("utf-8")
        buf = (self._lc.llama_token * (len(data) + 8))()
        n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, len(buf), bos, False)
        if n < 0:
            raise RuntimeError(f"tokenizer needs {-n} tokens for {len(data)} bytes")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token spells."""
        if token not in self._pieces:
            buf = ctypes.create_string_buffer(64)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            self._pieces[token] = buf.raw[:n]
        return self._pieces[token]

    def end_tokens(self, starts: tuple[str, ...]) -> np.ndarray:
        """Ids of every token that begins with one of `starts` (what may follow a complete label)."""
        key = "\x00".join(starts).encode("utf-8")
        if key not in self._ends:
            heads = tuple(s.encode("utf-8") for s in starts)
            buf = ctypes.create_string_buffer(64)
            ids = []
            for t in range(self.n_vocab):  # ~1 s once per process and terminator set
                n = self._lc.llama_token_to_piece(self._vocab, t, buf, len(buf), 0, False)
                if n > 0 and buf.raw[:n].startswith(heads):
                    ids.append(t)
            self._ends[key] = np.asarray(ids, dtype=np.int64)
        return self._ends[key]

    # ------------------------------------------------------------------ decoding

    def _decode(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[Sequence[int]],
                outputs: Sequence[bool]) -> None:
        b = self._batch
        b.n_tokens = len(tokens)
        for i, (tok, pos, ss, out) in enumerate(zip(tokens, positions, seqs, outputs)):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = len(ss)
            for j, s in enumerate(ss):
                b.seq_id[i][j] = s
            b.logits[i] = out
        rc = self._lc.llama_decode(self._ctx, b)
        if rc != 0:
            self._reset()
            raise RuntimeError(f"llama_decode returned {rc}")

    def _reset(self) -> None:
        self._lc.llama_memory_clear(self._mem, True)
        self._kv, self._cuts = [], []

    def _logits(self, rows: int) -> np.ndarray:
        """The output rows of the last decode, (rows, n_vocab) float32, a view valid until the next decode."""
        ptr = self._lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab))

    def _eval(self, ids: list[int]) -> tuple[int, int]:
        """Evaluate all but the last chunk of `ids` into sequence 0; where the last chunk starts, and tokens evaluated.

        llama.cpp's logits depend (slightly) on how a prompt is split into decode calls. The KV left by the previous
        prompt is reused only up to a cut that both prompts share, with the same cuts before it, so the result is
        exactly what a fresh evaluation gives: the same answer whatever ran before. The last chunk is decoded with
        the label trie (see `score`) and never reused.
        """
        cuts = chunk_cuts([self.piece(t) for t in ids])
        common = 0
        for a, b in zip(self._kv, ids):
            if a != b:
                break
            common += 1
        keep = 0
        for mine, theirs in zip(cuts, self._cuts):
            if mine != theirs or mine > min(common, len(ids) - 1):
                break
            keep = mine
        if not self._lc.llama_memory_seq_rm(self._mem, 0, keep, -1):
            self._reset()
            keep = 0
        self._kv, self._cuts = ids[:keep], [c for c in cuts if c <= keep]
        start = keep
        for cut in cuts[:-1]:
            if cut <= start:
                continue
            n = cut - start
            self._decode(ids[start:cut], range(start, cut), [(0,)] * n, [False] * n)
            self._kv = ids[:cut]
            self._cuts.append(cut)
            start = cut
        return start, len(ids) - keep

    @staticmethod
    def _trie(paths: list[list[int]], seqs: list[int]) -> tuple[_Node, list[_Node]]:
        """The trie of some labels' token paths: its root, and its nodes as batch rows in breadth-first order."""
        root = _Node(-1, -1)
        for path, s in zip(paths, seqs):
            node = root
            for depth, tok in enumerate(path):
                node = node.children.setdefault(tok, _Node(tok, depth))
                node.seqs.append(s)
        rows, frontier = [], list(root.children.values())
        while frontier:
            for node in frontier:
                node.index = len(rows)
                rows.append(node)
            frontier = [c for node in frontier for c in node.children.values()]
        return root, rows

    def _groups(self, paths: list[list[int]]) -> list[list[int]]:
        """Label indices in groups that fit one decode: at most N_SEQ_MAX - 1 labels and TRIE_MAX trie nodes."""
        order = sorted(range(len(paths)), key=lambda j: paths[j])  # neighbours share prefixes
        groups: list[list[int]] = [[]]
        prefixes: set[tuple[int, ...]] = set()
        for j in order:
            new = {tuple(paths[j][:d + 1]) for d in range(len(paths[j]))}
            if len(groups[-1]) >= N_SEQ_MAX - 1 or len(prefixes | new) > TRIE_MAX:
                groups.append([])
                prefixes = set()
            groups[-1].append(j)
            prefixes |= new
        return groups

    def _paths(self, tail: str, labels: tuple[str, ...]) -> list[list[int]]:
        """Each label's tokens as they follow `tail` (the prompt's last line), so a merge across it is honoured."""
        key = (tail, labels)
        if key not in self._path_cache:
            head = self.tokenize(tail, bos=False)
            paths = []
            for lab in labels:
                full = self.tokenize(tail + lab, bos=False)
                rest = full[len(head):] if full[:len(head)] == head else []
                paths.append(rest or self.tokenize(lab, bos=False))
            self._path_cache[key] = paths
        return self._path_cache[key]

    @staticmethod
    def _picks(root: _Node, paths: list[list[int]], logits: np.ndarray, lse: np.ndarray,
               end_ids: np.ndarray) -> list[tuple[list[float], float]]:
        """Per label: the log-probs of its 2nd, 3rd ... tokens (each from its parent's row) and of a terminator."""
        out = []
        for path in paths:
            node, lps = root.children[path[0]], []
            for tok in path[1:]:
                lps.append(float(logits[node.index, tok]) - lse[node.index])
                node = node.children[tok]
            ends = logits[node.index, end_ids].astype(np.float64)
            out.append((lps, float(_logsumexp(ends)) - lse[node.index]))
        return out

    def score(self, prompt: str, labels: Sequence[str], ends: tuple[str, ...]) -> tuple[np.ndarray, dict[str, int]]:
        """Log-probability of each label (its tokens, then any token starting with one of `ends`) after `prompt`.

        Returns the log-probabilities in label order and the token counts (prompt, evaluated, scored).
        """
        with self._lock:
            ids = self.tokenize(prompt, bos=True)
            paths = self._paths(prompt.rsplit("\n", 1)[-1], tuple(labels))
            nodes = len({tuple(p[:d + 1]) for p in paths for d in range(len(p))})
            if len(ids) + min(nodes, TRIE_MAX) > self.n_ctx:
                raise ValueError(f"prompt of {len(ids)} tokens does not fit the context of {self.n_ctx}; use fewer shots")
            end_ids = self.end_tokens(ends)
            start, evaluated = self._eval(ids)
            out = np.zeros(len(labels))
            scored, n, first_lp = 0, len(ids), None
            for group in self._groups(paths):
                seqs = [k + 1 for k in range(len(group))]
                root, rows = self._trie([paths[j] for j in group], seqs)
                for s in seqs:  # a label's sequence sees the prompt's KV (in one buffer: only its cells are tagged)
                    self._lc.llama_memory_seq_cp(self._mem, 0, s, -1, -1)
                # the first group shares its decode with the prompt's last chunk, whose tokens are in every sequence
                tail = ids[start:] if first_lp is None else []
                try:
                    self._decode(tail + [r.token for r in rows],
                                 list(range(start, n)) * bool(tail) + [n + r.depth for r in rows],
                                 [[0, *seqs]] * len(tail) + [r.seqs for r in rows],
                                 [False] * (len(tail) - 1) + [True] * bool(tail) + [True] * len(rows))
                    logits = self._logits(bool(tail) + len(rows))
                    if tail:
                        first_lp = logits[0].astype(np.float64) - _logsumexp(logits[0])
                        logits = logits[1:]
                    lse = _logsumexp(logits)
                    picks = self._picks(root, [paths[j] for j in group], logits, lse, end_ids)
                finally:
                    self._lc.llama_memory_seq_keep(self._mem, 0)
                if tail:  # the last chunk was decoded beside the trie: sequence 0 keeps it, but it is never reused
                    self._kv = ids[:start]
                scored += len(rows)
                for j, (node_lps, end_lp) in zip(group, picks):
                    out[j] = first_lp[paths[j][0]] + sum(node_lps) + end_lp
            counts = {"prompt_tokens": n, "evaluated_tokens": evaluated, "scored_tokens": scored}
            self.stats["prompts"] += 1
            for k, v in counts.items():
                self.stats[k] += v
            return out, counts

    def close(self) -> None:
        """Free the batch, the context and the weights."""
        with self._lock:
            if self._ctx is not None:
                self._lc.llama_batch_free(self._batch)
                self._lc.llama_free(self._ctx)
                self._lc.llama_model_free(self._model)
                self._ctx = self._model = None


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) over the last axis as float64 (float32 arithmetic: the rows are 262K wide, and numpy's
    pairwise summation keeps the relative error near 1e-7)."""
    top = x.max(axis=-1, keepdims=True)
    shifted = x - top
    np.exp(shifted, out=shifted)
    return (top.squeeze(-1).astype(np.float64) + np.log(shifted.sum(axis=-1).astype(np.float64)))
