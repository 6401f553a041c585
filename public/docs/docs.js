// Renders the platform's own OpenAPI document with swagger-ui (served by the gateway from swagger-ui-dist).
window.ui = SwaggerUIBundle({
	url: "/api/openapi.json",
	dom_id: "#swagger-ui",
	deepLinking: true,
	persistAuthorization: true,
});
