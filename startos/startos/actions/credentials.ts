import { storeJson } from '../fileModels/store.json'
import { sdk } from '../sdk'
import { adminUsername } from '../utils'

export const credentials = sdk.Action.withoutInput(
  'credentials',
  {
    name: 'Admin credentials',
    description: 'The user name and first password of the Arbiter admin account.',
    warning: null,
    allowedStatuses: 'any',
    group: null,
    visibility: 'enabled',
  },
  async () => {
    const password = await storeJson.read((store) => store.adminPassword).once()
    if (!password) throw new Error('No admin password yet: start Arbiter once.')
    return {
      version: '1',
      title: 'Admin credentials',
      message:
        'The password Arbiter was installed with. A password changed in Arbiter since is ' +
        'not shown here.',
      result: {
        type: 'group',
        value: [
          {
            type: 'single',
            name: 'User name',
            description: null,
            value: adminUsername,
            copyable: true,
            qr: false,
            masked: false,
          },
          {
            type: 'single',
            name: 'Password',
            description: null,
            value: password,
            copyable: true,
            qr: false,
            masked: true,
          },
        ],
      },
    }
  },
)
