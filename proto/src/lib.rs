//! The gRPC control service of the proxies (SetConfig, TmpSwitch, Status). Not built yet:
//! until then proxies are configured with `UMCTL SETDB` on their data port.
