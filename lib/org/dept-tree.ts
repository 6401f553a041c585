/** Department tree arithmetic over a company's flat department list (trees are small: all in memory). */
export interface DeptNode {
	id: string;
	parentId: string | null;
}

/** `ids` and every department below them. */
export function withDescendants(depts: DeptNode[], ids: string[]): string[] {
	const children = new Map<string, string[]>();
	for (const d of depts) {
		if (!d.parentId) continue;
		const list = children.get(d.parentId) ?? [];
		list.push(d.id);
		children.set(d.parentId, list);
	}
	const out = new Set<string>();
	const stack = [...ids];
	while (stack.length) {
		const id = stack.pop()!;
		if (out.has(id)) continue;
		out.add(id);
		stack.push(...(children.get(id) ?? []));
	}
	return [...out];
}

/** `id` and every department above it, nearest first. */
export function withAncestors(depts: DeptNode[], id: string): string[] {
	const byId = new Map(depts.map(d => [d.id, d]));
	const out: string[] = [];
	let current = byId.get(id);
	while (current && !out.includes(current.id)) {
		out.push(current.id);
		current = current.parentId ? byId.get(current.parentId) : undefined;
	}
	return out;
}

export type TreeNode<T> = T & { children: TreeNode<T>[] };

/** Nests a flat list; a node whose parent is not in the list becomes a root. Siblings by `order`, then name. */
export function buildTree<T extends DeptNode & { order?: number | null; name?: string }>(depts: T[]): TreeNode<T>[] {
	const nodes = new Map<string, TreeNode<T>>(depts.map(d => [d.id, { ...d, children: [] }]));
	const roots: TreeNode<T>[] = [];
	for (const node of nodes.values()) {
		const parent = node.parentId ? nodes.get(node.parentId) : undefined;
		(parent ? parent.children : roots).push(node);
	}
	const sort = (list: TreeNode<T>[]) => {
		list.sort((a, b) => (a.order ?? 0) - (b.order ?? 0) || String(a.name ?? "").localeCompare(String(b.name ?? "")));
		list.forEach(n => sort(n.children));
	};
	sort(roots);
	return roots;
}
