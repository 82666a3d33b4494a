import { FileHelper, z } from '@start9labs/start-sdk'
import { sdk } from '../sdk'
import { paths } from '../utils'

// The subset of the inventory schema (docs/cluster.example.yaml) the Configure
// action writes; Arbiter validates the whole file again when it loads it.
const host = z.object({
  name: z.string(),
  address: z.string(),
  ssh_user: z.string(),
  ssh_port: z.number().int(),
  sampling: z.literal('ssh'),
  vram_budget_mib: z.number().int().optional(),
})

const service = z.object({
  name: z.string(),
  host: z.string(),
  kind: z.literal('vllm'),
  base_url: z.string(),
  capabilities: z.array(z.literal('llm')),
  disabled: z.boolean(),
})

/** The cluster inventory Arbiter loads at start (ARBITER_CONFIG). */
export const clusterYaml = FileHelper.yaml(
  { base: sdk.volumes.main, subpath: paths.cluster },
  z.object({
    defaults: z.object({ ssh_key: z.string(), known_hosts: z.string() }),
    hosts: z.array(host),
    services: z.array(service),
  }),
)
