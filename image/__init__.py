"""The appliance image builder: profile -> flashable raw disk image."""
