package events

type CustomerEvents struct {
	DeviceConnectivityData    `json:"-,omitempty`
	DeviceStateChangedData    `json:"-,omitempty`
	DeviceUpdateData          `json:"-,omitempty`
	RolloutEventRecord        `json:"-,omitempty`
	EventEndpointDisabledData `json:"-,omitempty`
	EventEndpointTestData     `json:"-,omitempty`
}
