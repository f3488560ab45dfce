"""The Python-function tool the agent, server-page and browser tests share: it records each city it is run for, so
a test can assert that a call ran or that nothing ran (clear CALLED first)."""

from __future__ import annotations

CALLED: list[str] = []


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city name, e.g. Paris.
    """
    CALLED.append(city)
    return f"It is sunny and 22 degrees in {city}."
