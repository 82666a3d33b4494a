/**
 * The Configure form turned into what Arbiter reads: the cluster inventory
 * (ARBITER_CONFIG, schema in docs/cluster.example.yaml) and the known_hosts file
 * it names. Pure functions without the SDK, so tests/ship can compile this file
 * alone, run it with node and load the result with Arbiter's own inventory loader.
 */
import { paths } from './utils'

/** One GPU host as the Configure form describes it. */
export type HostInput = {
  name: string
  address: string
  sshUser: string
  sshPort: number
  vramBudgetMib: number | null
  hostKey: string | null
}

/** The part of the Configure form that becomes the cluster inventory. */
export type ClusterInput = {
  hosts: HostInput[]
  vllmPort: number
  hiddenServices: string[]
}

export type ClusterHost = {
  name: string
  address: string
  ssh_user: string
  ssh_port: number
  sampling: 'ssh'
  vram_budget_mib?: number
}

export type ClusterService = {
  name: string
  host: string
  kind: 'vllm'
  base_url: string
  capabilities: 'llm'[]
  disabled: boolean
}

export type ClusterDocument = {
  defaults: { ssh_key: string; known_hosts: string }
  hosts: ClusterHost[]
  services: ClusterService[]
}

/** Every host serves vLLM on the configured port under this service name. */
export function vllmServiceName(hostName: string): string {
  return `vllm-${hostName}`
}

/** What the form allows but the inventory would refuse; empty when it is fine. */
export function clusterProblems(input: ClusterInput): string[] {
  const problems: string[] = []
  const seen = new Set<string>()
  for (const host of input.hosts) {
    if (seen.has(host.name)) problems.push(`Host name "${host.name}" is used twice.`)
    seen.add(host.name)
  }
  const services = new Set(input.hosts.map((host) => vllmServiceName(host.name)))
  for (const name of input.hiddenServices) {
    if (!services.has(name)) {
      const known = [...services].join(', ') || 'none'
      problems.push(`No service named "${name}" to hide (services: ${known}).`)
    }
  }
  return problems
}

function urlHost(address: string): string {
  return address.includes(':') ? `[${address}]` : address
}

/**
 * The inventory. Paths are relative to the file's own directory (the volume root),
 * which is how the inventory loader resolves them.
 */
export function clusterDocument(input: ClusterInput): ClusterDocument {
  const hidden = new Set(input.hiddenServices)
  return {
    defaults: { ssh_key: paths.sshKey, known_hosts: paths.knownHosts },
    hosts: input.hosts.map((host) => ({
      name: host.name,
      address: host.address,
      ssh_user: host.sshUser,
      ssh_port: host.sshPort,
      sampling: 'ssh' as const,
      ...(host.vramBudgetMib === null ? {} : { vram_budget_mib: host.vramBudgetMib }),
    })),
    services: input.hosts.map((host) => ({
      name: vllmServiceName(host.name),
      host: host.name,
      kind: 'vllm' as const,
      base_url: `http://${urlHost(host.address)}:${input.vllmPort}`,
      capabilities: ['llm' as const],
      disabled: hidden.has(vllmServiceName(host.name)),
    })),
  }
}

/**
 * known_hosts lines for the host keys given in the form, named the way OpenSSH (and
 * Arbiter's strict check) names a host: `address`, or `[address]:port` off port 22.
 * Hosts without a key stay unknown and are refused until their key is added.
 */
export function knownHostsText(input: ClusterInput): string {
  const lines = input.hosts.flatMap((host) => {
    const key = (host.hostKey ?? '').trim().split(/\s+/).slice(0, 2).join(' ')
    if (!key) return []
    const pattern = host.sshPort === 22 ? host.address : `[${host.address}]:${host.sshPort}`
    return [`${pattern} ${key}`]
  })
  return lines.map((line) => `${line}\n`).join('')
}
