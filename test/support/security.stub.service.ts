/** The test `security` service as a service file, for nodes started by moleculer-runner. */
import { SecurityStub } from "./security.stub";

export default SecurityStub;
