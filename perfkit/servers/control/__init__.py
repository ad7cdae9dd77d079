"""Server controllers: what perfkit can see and do beyond a server's HTTP API. The interface and what every
server shares live here; each server kind's own controller lives with its kind (``perfkit.kinds``)."""

from perfkit.servers.control.base import (Device, HostView, Killable, PrefixCacheReset, RemoteControl, RestartInfo,
                                          ServerControl, SettingCheck, Unknown, WallClock)

__all__ = ["Device", "HostView", "Killable", "PrefixCacheReset", "RemoteControl", "RestartInfo", "ServerControl", "SettingCheck",
           "Unknown", "WallClock"]
