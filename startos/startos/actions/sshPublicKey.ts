import { sshPublicKey } from '../fileModels/ssh'
import { sdk } from '../sdk'

export const showSshPublicKey = sdk.Action.withoutInput(
  'ssh-public-key',
  {
    name: 'SSH public key',
    description:
      "Arbiter's SSH key. Add it to ~/.ssh/authorized_keys of the SSH user on every GPU host.",
    warning: null,
    allowedStatuses: 'any',
    group: null,
    visibility: 'enabled',
  },
  async () => {
    const key = (await sshPublicKey.read().once())?.trim()
    if (!key) throw new Error('The SSH key is generated when the package is installed.')
    return {
      version: '1',
      title: 'SSH public key',
      message: 'On each host: echo "<this key>" >> ~<ssh user>/.ssh/authorized_keys',
      result: {
        type: 'single',
        value: key,
        copyable: true,
        qr: false,
        masked: false,
      },
    }
  },
)
