from twisted.application.service import ServiceMaker

nmos_ref = ServiceMaker("nmos-ref", "nmos_ref.service", "AMWA NMOS IS-04 registry and node", "nmos-ref")
