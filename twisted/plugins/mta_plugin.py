"""twistd plugin: ``twistd mta`` (the code lives in mta.tap, imported lazily)."""

from twisted.application.service import ServiceMaker

mta = ServiceMaker("mta", "mta.tap", "A mail transfer agent modelled on Postfix.", "mta")
