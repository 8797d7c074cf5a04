"""ccserver: real-time credit control for VoIP operators."""

from ccserver import compiled

compiled.install()
