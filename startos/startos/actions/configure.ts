import { clusterDocument, clusterProblems, knownHostsText } from '../cluster'
import { clusterYaml } from '../fileModels/cluster.yaml'
import { knownHosts } from '../fileModels/ssh'
import { storeJson } from '../fileModels/store.json'
import { sdk } from '../sdk'

const { InputSpec, List, Value } = sdk

const slug = {
  regex: '^[a-z0-9][a-z0-9-]{0,62}$',
  description: 'Lowercase letters, digits and "-" (1-63 characters, not starting with "-").',
}

const hostSpec = InputSpec.of({
  name: Value.text({
    name: 'Name',
    description: 'A short name, used in URLs and logs (e.g. spark-1).',
    required: true,
    default: null,
    patterns: [slug],
  }),
  address: Value.text({
    name: 'Address',
    description: 'Hostname or IP address on your LAN.',
    required: true,
    default: null,
    patterns: [
      {
        regex: '^[A-Za-z0-9][A-Za-z0-9.:-]*$',
        description: 'A hostname or an IPv4/IPv6 address, without "user@".',
      },
    ],
  }),
  sshUser: Value.text({
    name: 'SSH user',
    description:
      'The account Arbiter logs in as. It must be allowed to run `docker` and `nvidia-smi`.',
    required: true,
    default: 'arbiter',
    patterns: [
      {
        regex: '^[a-z_][a-z0-9_-]{0,31}$',
        description: 'A POSIX user name.',
      },
    ],
  }),
  sshPort: Value.number({
    name: 'SSH port',
    required: true,
    default: 22,
    min: 1,
    max: 65535,
    integer: true,
  }),
  vramBudgetMib: Value.number({
    name: 'VRAM budget',
    description:
      'Memory the models on this host may use. Leave empty to use what the GPUs report.',
    required: false,
    default: null,
    min: 1,
    integer: true,
    units: 'MiB',
  }),
  hostKey: Value.text({
    name: 'Host key',
    description:
      "The host's public SSH key: the output of `cat /etc/ssh/ssh_host_ed25519_key.pub` " +
      'on that host. Arbiter refuses hosts whose key it does not know.',
    required: false,
    default: null,
    patterns: [
      {
        regex:
          '^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}( .*)?$',
        description: 'One OpenSSH public key line, e.g. "ssh-ed25519 AAAA... root@host".',
      },
    ],
  }),
})

export const configureSpec = InputSpec.of({
  hosts: Value.list(
    List.obj(
      {
        name: 'GPU hosts',
        description:
          'The machines Arbiter watches and swaps models on, reached over SSH with the ' +
          'key shown by the "SSH public key" action.',
        minLength: 1,
      },
      {
        spec: hostSpec,
        displayAs: '{{name}} ({{address}})',
        uniqueBy: 'name',
      },
    ),
  ),
  vllmPort: Value.number({
    name: 'vLLM port',
    description:
      'The port vLLM answers on on every host; each host gets a service vllm-<host name>.',
    required: true,
    default: 8000,
    min: 1,
    max: 65535,
    integer: true,
  }),
  containerName: Value.text({
    name: 'Container name',
    description:
      'The docker container name Arbiter gives the vLLM containers it starts (models in ' +
      'the catalog may set their own).',
    required: true,
    default: 'arbiter-vllm',
    patterns: [
      {
        regex: '^[a-zA-Z0-9][a-zA-Z0-9_.-]+$',
        description: "Docker's container name rule: [a-zA-Z0-9][a-zA-Z0-9_.-]+",
      },
    ],
  }),
  hiddenServices: Value.list(
    List.text(
      {
        name: 'Services to hide',
        description:
          'Services (vllm-<host name>) that get no tile, are never probed and are listed ' +
          'as disabled by the API.',
        default: [],
      },
      { patterns: [slug] },
    ),
  ),
  webhookUrl: Value.text({
    name: 'Webhook URL',
    description: 'Where Arbiter POSTs signed swap and lock events. Leave empty for none.',
    required: false,
    default: null,
    inputmode: 'url',
    patterns: [
      {
        regex: '^https?://[^\\s/?#]+\\S*$',
        description: 'An http:// or https:// URL.',
      },
    ],
  }),
  webhookSecret: Value.text({
    name: 'Webhook secret',
    description:
      'The Standard Webhooks signing secret the receiver checks (whsec_ followed by ' +
      'base64). Required with a webhook URL.',
    required: false,
    default: null,
    masked: true,
    patterns: [
      {
        regex: '^whsec_[A-Za-z0-9+/]+={0,2}$',
        description: 'whsec_ followed by standard base64.',
      },
    ],
  }),
})

type ConfigureInput = typeof configureSpec._TYPE
type HostInput = ConfigureInput['hosts'][number]

/** Where a Configure field is written, i.e. what Arbiter reads it as. */
type Target =
  | { inventory: string } // a key of the cluster inventory (ARBITER_CONFIG)
  | { env: string } // an environment variable of Arbiter's processes (settings.py)
  | { webhook: 'url' | 'secret' } // the endpoint assets/prepare.py keeps in Arbiter's database

/** Every form field and its target; tests/ship checks each against Arbiter. */
export const configureTargets = {
  hosts: { inventory: 'hosts' },
  vllmPort: { inventory: 'services[].base_url' },
  containerName: { env: 'ARBITER_CONTAINER_NAME' },
  hiddenServices: { inventory: 'services[].disabled' },
  webhookUrl: { webhook: 'url' },
  webhookSecret: { webhook: 'secret' },
} as const satisfies Record<keyof ConfigureInput, Target>

export const hostTargets = {
  name: { inventory: 'hosts[].name' },
  address: { inventory: 'hosts[].address' },
  sshUser: { inventory: 'hosts[].ssh_user' },
  sshPort: { inventory: 'hosts[].ssh_port' },
  vramBudgetMib: { inventory: 'hosts[].vram_budget_mib' },
  hostKey: { inventory: 'defaults.known_hosts' },
} as const satisfies Record<keyof HostInput, Target>

export const configure = sdk.Action.withInput(
  'configure',
  {
    name: 'Configure',
    description:
      'Set the GPU hosts Arbiter manages, the vLLM port and container name, the services ' +
      'to hide and the webhook that receives swap events.',
    warning: null,
    allowedStatuses: 'any',
    group: null,
    visibility: 'enabled',
  },
  configureSpec,
  async () => (await storeJson.read((store) => store.configure).once()) ?? null,
  async ({ effects, input }) => {
    const problems = clusterProblems(input)
    if (input.webhookUrl && !input.webhookSecret) {
      problems.push('A webhook URL needs its secret.')
    }
    if (problems.length > 0) throw new Error(problems.join('\n'))

    await knownHosts.write(effects, knownHostsText(input))
    await clusterYaml.write(effects, clusterDocument(input))
    const store = (await storeJson.read().once()) ?? {}
    await storeJson.write(effects, { ...store, configure: input })
    return {
      version: '1',
      title: 'Saved',
      message:
        'Arbiter restarts with these hosts. Each host must accept the key shown by the ' +
        '"SSH public key" action for its SSH user.',
      result: null,
    }
  },
)
