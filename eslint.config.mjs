// ESLint flat config: JavaScript's and typescript-eslint's recommended rules, no formatting rules.
import js from "@eslint/js";
import globals from "globals";
import tseslint from "typescript-eslint";

export default tseslint.config(
	{ ignores: ["dist/", "node_modules/", "data/", "coverage/"] },
	js.configs.recommended,
	...tseslint.configs.recommended,
	{
		rules: {
			"@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrors: "none" }],
		},
	},
	{
		// Tests read JSON bodies field by field; typing each response would only restate the assertions.
		files: ["test/**/*.ts"],
		rules: { "@typescript-eslint/no-explicit-any": "off" },
	},
	{
		// Node scripts in plain JavaScript.
		files: ["**/*.js", "**/*.mjs"],
		ignores: ["public/**"],
		languageOptions: { sourceType: "commonjs", globals: globals.node },
		rules: { "@typescript-eslint/no-require-imports": "off" },
	},
	{
		files: ["eslint.config.mjs"],
		languageOptions: { sourceType: "module" },
	},
	{
		// Browser scripts of the public pages.
		files: ["public/**/*.js"],
		languageOptions: { sourceType: "script", globals: { ...globals.browser, SwaggerUIBundle: "readonly" } },
	},
);
