// Shows whether the platform is ready, from GET /api/ready.
(async () => {
	const status = document.getElementById("status");
	try {
		const res = await fetch("/api/ready");
		const body = await res.json();
		status.textContent = res.ok
			? `Ready: ${body.services.join(", ")}`
			: `Not ready: waiting for ${(body.data && body.data.missing || []).join(", ") || "the platform"}`;
		status.className = res.ok ? "ok" : "down";
	} catch {
		status.textContent = "The gateway does not answer.";
		status.className = "down";
	}
})();
