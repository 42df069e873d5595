"""The white-box audit's report in words: the estimates beside the accountant's epsilon, and the verdict.

A stored audit that lacks one of the estimates (the f-DP bound, the measured mechanism) gets no line for it.
"""

from __future__ import annotations


def _fdp_line(results: dict) -> list[str]:
    """The f-DP one-run bound, beside the claim read as mu-GDP (a stored audit may lack it)."""
    fdp = results.get("one_run_fdp")
    if fdp is None:
        return []
    return [f"  one-run f-DP bound (95%, Gaussian curves):  mu {fdp['mu']:.3f}, epsilon {fdp['epsilon']:.3f}   "
            f"(the claim as mu-GDP: mu {results['claimed_mu']:.3f}; {fdp['correct']} of {fdp['guesses']} right)"]


def _measured_mechanism_line(results: dict) -> list[str]:
    """The accountant run on the mechanism the projections show (a stored audit may lack it)."""
    if "measured_mechanism_epsilon" not in results:
        return []
    return [f"  the measured mechanism (model-based):       sigma {results['measured_sigma']:.3f}, "
            f"epsilon {results['measured_mechanism_epsilon']:.3f} (the accountant on the measured noise and shift)"]


def format_whitebox(results: dict) -> str:
    """The audit's report: the estimates beside the accountant's epsilon, the measurements, and the verdict."""
    b = results["bayes"]
    lines = [
        f"White-box audit: {results['canaries']} gradient canaries ({results['included']} included), "
        f"{results['runs']} run(s) of {results['steps']} steps, sigma {results['noise_multiplier']:.3f}, q {results['sample_rate']:.4g}, "
        f"delta {results['delta']:g}, {results.get('subject', 'dpplat')}'s DP-SGD, inject {results['inject']}"
        + (f" (group {results['inject_group']})" if results["inject_group"] else ""),
        f"  accountant's epsilon (the claim):           {results['claimed_epsilon']:.3f}",
        f"  one-run lower bound (95%, non-parametric):  {results['lower_bound']:.3f}   "
        f"({results['one_run']['correct']} of {results['one_run']['guesses']} guesses right)",
        f"  Bayesian interval on those guesses:         [{b['low']:.3f}, {b['high']:.3f}]",
        *_fdp_line(results),
        f"  mu-GDP fit (model-based):                    mu {results['gdp_mu']:.3f}, "
        f"epsilon {results['gdp_epsilon']:.3f}",
        *_measured_mechanism_line(results),
        f"  measured against the claim: noise {results['measured_noise']:.2f} x sigma C, a canary's clipped "
        f"contribution {results['measured_canary_shift']:.2f} x C",
        results["verdict"],
        results["accounting_note"],
    ]
    return "\n".join(lines)
