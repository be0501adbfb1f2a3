"""WebRTC plumbing shared by the Gradio (fastrtc) and Streamlit (streamlit-webrtc) pages."""


def allow_loopback_ice() -> None:
    """On a machine with only a loopback interface aiortc offers no ICE candidates and WebRTC never connects.
    Offer 127.0.0.1 in that case only (the browser side needs --allow-loopback-in-peer-connection)."""
    try:
        import aioice.ice as ice
    except ImportError:
        return
    if getattr(ice.get_host_addresses, "_omni_loopback", False):
        return
    original = ice.get_host_addresses

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool):
        return original(use_ipv4, use_ipv6) or (["127.0.0.1"] if use_ipv4 else [])

    get_host_addresses._omni_loopback = True
    ice.get_host_addresses = get_host_addresses
