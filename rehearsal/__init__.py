"""The boot rehearsal: the servers that the synthesized templates describe, booted under real
systemd in throwaway containers (`make rehearse`). See README "The boot rehearsal"."""
