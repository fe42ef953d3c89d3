"""Audio clips for the LRNN audio study (benchmarks/audio_devtest.py): speech spoken by espeak-ng in several
voices and synthesised music from a seeded generator, split into a development set (tune on it) and a test
set of other clips (report on it).  Nothing is stored in the repo: every clip is regenerated from its recipe.

    from audio_clips import SETS, make_clip
    x, rate = make_clip(SETS["dev"][0], seconds=1.0)       # peak-normalised float64 samples, 44.1 kHz

Speech needs the ``espeak-ng`` program (``apt-get install espeak-ng``); :func:`make_clip` raises
:class:`RuntimeError` without it.  Its 22.05 kHz output is resampled to 44.1 kHz (scipy's resample_poly) and
the excerpt starts at the first sample above 5 % of the peak (past the leading silence).
"""
from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RATE = 44100

_TEXTS = {
    "en1": "The quick brown fox jumps over the lazy dog while seven sailors sing softly.",
    "en2": "Please call Stella and ask her to bring these things with her from the store.",
    "de": "Der schnelle braune Fuchs springt heute frueh ueber den faulen Hund am Flussufer.",
    "fr": "Le vif renard brun saute par dessus le chien paresseux au bord de la riviere.",
    "es": "El veloz murcielago hindu comia feliz cardillo y kiwi en la cigarra del jardin.",
}

# recipe dicts: kind speech (voice, text key, words per minute) / music (seed) / file (repo wav, start s)
SETS = {
    "dev": [
        {"name": "speech-en-m3", "kind": "speech", "voice": "en-us+m3", "text": "en1", "wpm": 160},
        {"name": "speech-de-f2", "kind": "speech", "voice": "de+f2", "text": "de", "wpm": 150},
        {"name": "music-s1", "kind": "music", "seed": 1},
        {"name": "music-s2", "kind": "music", "seed": 2},
    ],
    "test": [
        {"name": "speech-en-f3", "kind": "speech", "voice": "en+f3", "text": "en2", "wpm": 170},
        {"name": "speech-fr-m1", "kind": "speech", "voice": "fr+m1", "text": "fr", "wpm": 150},
        {"name": "speech-es-f4", "kind": "speech", "voice": "es+f4", "text": "es", "wpm": 165},
        {"name": "speech.wav", "kind": "file", "path": "data/speech.wav", "start": 1.0},
        {"name": "music-s11", "kind": "music", "seed": 11},
        {"name": "music-s12", "kind": "music", "seed": 12},
    ],
}


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speech(voice: str, text: str, wpm: int = 160, rate: int = RATE) -> np.ndarray:
    """espeak-ng speaking ``text`` in ``voice``, resampled to ``rate``."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    if not have_espeak():
        raise RuntimeError("speech clips need the espeak-ng program (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(out), text], check=True,
                       capture_output=True, timeout=60)
        sr, x = wavfile.read(out)
    x = x.astype(np.float64)
    g = math.gcd(rate, sr)
    return resample_poly(x, rate // g, sr // g)


def music(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Seeded synthesised music: a melody over a bass line (and for some seeds a chord pad and noise hits),
    plucked notes with 3-10 harmonics of a random spectral tilt and inharmonicity, attack-decay envelopes,
    vibrato; key, scale, tempo and timbres drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    x = np.zeros(n)
    root = int(rng.integers(45, 58))
    scale = [0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.5 else [0, 2, 3, 5, 7, 8, 10]
    beat = float(rng.uniform(0.12, 0.4))

    def voice(notes, dur, amp, harm, tilt, decay, vib, inh, attack):
        for i, note in enumerate(notes):
            f0 = 440.0 * 2 ** ((note - 69) / 12)
            on = i * dur
            if on >= seconds:
                break
            m = (t >= on) & (t < on + 3 * dur)
            tt = t[m] - on
            env = (1 - np.exp(-tt / attack)) * np.exp(-tt / (decay * dur))
            v = 1 + vib * np.sin(2 * np.pi * 5.5 * tt)
            for k in range(1, harm + 1):
                fk = f0 * k * (1 + inh * k * k)
                if fk < rate / 2:
                    x[m] += amp / k ** tilt * env * np.sin(2 * np.pi * fk * v * tt + rng.uniform(0, 2 * np.pi))

    steps = int(math.ceil(seconds / beat)) + 1
    deg = np.cumsum(rng.integers(-2, 3, steps)) % 14
    melody = [root + 12 + 12 * (d // 7) + scale[d % 7] for d in deg]
    voice(melody, beat, 0.5, int(rng.integers(3, 11)), float(rng.uniform(0.7, 1.6)), float(rng.uniform(0.4, 1.2)),
          float(rng.uniform(0, 0.004)), float(rng.uniform(0, 6e-4)), float(rng.uniform(0.002, 0.02)))
    bass = [root - 12 + scale[int(d) % 7] for d in rng.integers(0, 7, steps // 4 + 1)]
    voice(bass, 4 * beat, 0.4, int(rng.integers(2, 7)), 1.0, 0.8, 0.0, 1e-4, 0.005)
    if rng.random() < 0.5:   # a sustained chord pad
        voice([root + 12 + scale[2]] * 2, 2 * seconds, 0.15, 4, 1.5, 3.0, 0.003, 0.0, 0.08)
        voice([root + 12 + scale[4]] * 2, 2 * seconds, 0.15, 4, 1.5, 3.0, 0.003, 0.0, 0.08)
    if rng.random() < 0.5:   # hi-hat-like noise hits on the off-beats
        for i in range(steps):
            on = (i + 0.5) * beat
            m = (t >= on) & (t < on + 0.05)
            x[m] += 0.15 * rng.standard_normal(m.sum()) * np.exp(-(t[m] - on) / 0.01)
    return x


def excerpt(x: np.ndarray, seconds: float, rate: int, start: float | None = None) -> np.ndarray:
    """``seconds`` of ``x`` from ``start`` (s) or from its first sample above 5 % of the peak; peak-normalised."""
    n = int(round(seconds * rate))
    i0 = int(round(start * rate)) if start is not None else int(np.argmax(np.abs(x) > 0.05 * np.abs(x).max()))
    i0 = max(0, min(i0, len(x) - n))
    y = x[i0:i0 + n]
    if len(y) < n:
        y = np.pad(y, (0, n - len(y)))
    return y / np.abs(y).max()


def make_clip(recipe: dict, seconds: float = 1.0, rate: int = RATE) -> tuple[np.ndarray, int]:
    """(samples, rate) of one recipe of :data:`SETS`."""
    kind = recipe["kind"]
    if kind == "speech":
        return excerpt(speech(recipe["voice"], _TEXTS[recipe["text"]], recipe["wpm"], rate), seconds, rate), rate
    if kind == "music":
        return excerpt(music(seconds + 0.5, rate, recipe["seed"]), seconds, rate, start=0.25), rate
    if kind == "file":
        from inr.signals import load

        sig = load(HERE / recipe["path"])
        return excerpt(sig.values[:, 0], seconds, sig.rate, start=recipe["start"]), sig.rate
    raise ValueError(f"unknown clip kind {kind!r}")
